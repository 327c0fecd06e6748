//! `_summary` and `_elements` ([search.html#summary](http://hl7.org/fhir/R4/search.html#summary),
//! [search.html#elements](http://hl7.org/fhir/R4/search.html#elements)): the part of a
//! resource served when a client asks for less than all of it. R4 defines both as general
//! parameters of the RESTful interactions (http.html), so they apply to read, vread, search
//! and history alike.
//!
//! A [`Subset`] only removes members from a parsed resource. What stays is not touched, so
//! number literals and member order are kept; the result carries the `SUBSETTED` tag in
//! `meta.tag` (appended, nothing else in `meta` changes) so that it is not mistaken for the
//! full resource, nor stored over it ([`is_subsetted`]).
//!
//! What each subset keeps, driven by the R4 definitions (`isSummary`, `isModifier`, `min`):
//!
//! - always `resourceType`, `id` and `meta`, whole;
//! - `_summary=true`: at every depth, the elements marked `isSummary`. A complex element keeps
//!   the summary elements of its data type or backbone element (so `Attachment.data` and the
//!   `id` and `extension` of data types go); a resource inside a summary element
//!   (`Bundle.entry.resource`) is summarized as its own type. `text`, `contained` and
//!   `extension` are not summary elements;
//! - `_summary=text`: `text` and the top-level mandatory (`min` ≥ 1) elements;
//! - `_summary=data`: everything but `text`;
//! - `_elements=a,b`: the listed top-level elements and the top-level mandatory elements
//!   ("servers SHOULD always return mandatory elements").
//!
//! Two rules hold for every subset:
//!
//! - **A modifier element is never dropped where its parent is kept, and it is kept whole.**
//!   A client that cannot see a modifier (`modifierExtension`, `Patient.active`,
//!   `Observation.status`) would misread everything else. The R4 definition of `isSummary`
//!   says modifiers are summary elements (the R4 data still leaves
//!   `DomainResource.modifierExtension` unmarked), and later versions of the search page ask
//!   servers to return modifier elements with `_elements`.
//! - **A primitive goes with its `_name` companion** (`_birthDate` with `birthDate`,
//!   `_valueString` with `valueString`): in JSON the companion carries the primitive's own
//!   `id` and extensions ([json.html#primitive](http://hl7.org/fhir/R4/json.html#primitive)),
//!   so the two are one element.
//!
//! **Architecture Invariant:** pure functions over [`Json`]; the request parameters are
//! parsed here too ([`Elements::parse`]), their errors are returned as text for the caller
//! to turn into its own error type.

use std::collections::HashMap;
use std::sync::LazyLock;

use json_syntax::object::Object;

use crate::Json;
use crate::definitions::{Definitions, ElementDefinition, TypeKind};

/// The code system of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// The code that marks a resource as incomplete.
pub const SUBSETTED_CODE: &str = "SUBSETTED";

/// What part of a resource to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// `_summary=true`
    Summary,
    /// `_summary=text`
    Text,
    /// `_summary=data`
    Data,
    /// `_elements=...`
    Elements(Elements),
}

/// How a resource is served: as the answer or a match of a search, or as an `_include`d or
/// `_revinclude`d resource (`Bundle.entry.search.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Match,
    Include,
}

impl Subset {
    /// Whether the subset applies to a resource of `resource_type` served as `mode`.
    ///
    /// `_summary` applies to every resource of a result. `_elements` applies to matches: in
    /// R4 "the list of elements does not apply to included resources". A selector that names
    /// a type (`Patient.name`, the form later versions define) applies to included resources
    /// of that type too, as those versions ask.
    pub fn applies_to(&self, resource_type: &str, mode: SearchMode) -> bool {
        match (self, mode) {
            (Subset::Elements(elements), SearchMode::Include) => elements
                .selectors
                .iter()
                .any(|s| s.resource_type.as_deref() == Some(resource_type)),
            _ => true,
        }
    }

    /// Removes from `resource` what the subset leaves out and tags it `SUBSETTED`. Returns
    /// whether it did: a value that is not a resource of a known type, or one the subset
    /// does not apply to ([`Subset::applies_to`]), is left as it is.
    pub fn apply(&self, resource: &mut Json, mode: SearchMode) -> bool {
        let Some(object) = resource.as_object_mut() else {
            return false;
        };
        let Some(node) = resource_node(object) else {
            return false;
        };
        let resource_type = node.name;
        if !self.applies_to(resource_type, mode) {
            return false;
        }
        match self {
            Subset::Summary => summarize_object(object, node, true),
            Subset::Text => keep_top_level(object, node, |_, element| element.name() == "text"),
            Subset::Data => {
                for entry in std::mem::take(object) {
                    if entry.key.as_str() != "text" {
                        object.push_entry(entry);
                    }
                }
            }
            Subset::Elements(elements) => keep_top_level(object, node, |key, element| {
                elements.selects(resource_type, key, element, mode)
            }),
        }
        mark_subsetted(object);
        true
    }
}

/// Whether `resource` carries the `SUBSETTED` tag in `meta.tag`.
pub fn is_subsetted(resource: &Json) -> bool {
    resource
        .as_object()
        .and_then(|o| o.get_unique("meta").ok().flatten())
        .and_then(Json::as_object)
        .and_then(|meta| meta.get_unique("tag").ok().flatten())
        .and_then(Json::as_array)
        .is_some_and(|tags| tags.iter().any(is_subsetted_coding))
}

/// The selectors of an `_elements` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elements {
    selectors: Vec<Selector>,
}

/// One item of `_elements`: `name`, `value[x]`, `valueQuantity` or `Patient.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    /// The type named by a `Type.name` item.
    resource_type: Option<String>,
    /// An element name (`value` for `value[x]`) or the JSON name of one type of a choice
    /// element (`valueQuantity`).
    name: String,
}

/// An `_elements` parameter parsed for the resource types of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedElements {
    /// The selectors understood; `None` when none was.
    pub elements: Option<Elements>,
    /// One message per item that names no top-level element of the request's types, or
    /// asks for a nested element (a caller with lenient handling ignores these items).
    pub unsupported: Vec<String>,
}

impl Elements {
    /// Parses the value of `_elements` for a request about `resource_types` (empty: any
    /// type, as in a system search without `_type`). Items are top-level element names,
    /// optionally prefixed with a resource type (`Patient.name`); a choice element is named
    /// `value`, `value[x]` or by one of its types (`valueQuantity`).
    ///
    /// An empty item is an error; an item that names nothing is reported in
    /// [`ParsedElements::unsupported`].
    pub fn parse(value: &str, resource_types: &[&str]) -> Result<ParsedElements, String> {
        let definitions = Definitions::r4();
        let any_type = resource_types.is_empty();
        let all_types;
        let resource_types = if any_type {
            all_types = definitions.resource_types();
            all_types.as_slice()
        } else {
            resource_types
        };
        let mut selectors = Vec::new();
        let mut unsupported = Vec::new();
        for item in value.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!(
                    "_elements={value}: expected a comma-separated list of element names"
                ));
            }
            let (resource_type, name) = match item.split_once('.') {
                Some((head, name)) if definitions.is_resource_type(head) => (Some(head), name),
                _ => (None, item),
            };
            if name.contains('.') {
                unsupported.push(format!(
                    "_elements={item}: only top-level elements can be selected"
                ));
                continue;
            }
            let name = name.strip_suffix("[x]").unwrap_or(name);
            let candidates = match &resource_type {
                Some(t) => std::slice::from_ref(t),
                None => resource_types,
            };
            if candidates.iter().any(|t| is_top_level(t, name)) {
                let selector = Selector {
                    resource_type: resource_type.map(str::to_owned),
                    name: name.to_owned(),
                };
                if !selectors.contains(&selector) {
                    selectors.push(selector);
                }
            } else {
                let owner = match candidates {
                    [one] => (*one).to_owned(),
                    _ if any_type => "any resource type".to_owned(),
                    many => format!("any of {}", many.join(", ")),
                };
                unsupported.push(format!(
                    "_elements={item}: {name:?} is not a top-level element of {owner}"
                ));
            }
        }
        Ok(ParsedElements {
            elements: (!selectors.is_empty()).then_some(Elements { selectors }),
            unsupported,
        })
    }

    /// Adds the selectors of a repeated `_elements`.
    pub fn extend(&mut self, other: Elements) {
        for selector in other.selectors {
            if !self.selectors.contains(&selector) {
                self.selectors.push(selector);
            }
        }
    }

    /// The parameter value these selectors stand for (for `self` and `next` links).
    pub fn to_param(&self) -> String {
        self.selectors
            .iter()
            .map(|s| match &s.resource_type {
                Some(t) => format!("{t}.{}", s.name),
                None => s.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn selects(
        &self,
        resource_type: &str,
        key: &str,
        element: &ElementDefinition,
        mode: SearchMode,
    ) -> bool {
        let bare = key.strip_prefix('_').unwrap_or(key);
        self.selectors.iter().any(|s| {
            let type_matches = match (&s.resource_type, mode) {
                (Some(t), _) => t == resource_type,
                (None, SearchMode::Match) => true,
                (None, SearchMode::Include) => false,
            };
            type_matches && (s.name == element.name() || s.name == bare)
        })
    }
}

/// Whether `name` is a top-level element of `resource_type`, or the JSON name of one type
/// of a top-level choice element.
fn is_top_level(resource_type: &str, name: &str) -> bool {
    SCHEMA.nodes.get(resource_type).is_some_and(|node| {
        node.members.iter().any(|(key, member)| {
            !key.starts_with('_') && (key.as_ref() == name || member.element.name() == name)
        })
    })
}

fn keep_top_level(
    object: &mut Object,
    node: &Node,
    wanted: impl Fn(&str, &ElementDefinition) -> bool,
) {
    for entry in std::mem::take(object) {
        let key = entry.key.as_str();
        let keep = always_kept(key)
            || node.members.get(key).is_some_and(|member| {
                let element = member.element;
                element.modifier || element.min > 0 || wanted(key, element)
            });
        if keep {
            object.push_entry(entry);
        }
    }
}

/// `resourceType`, `id` (with `_id`) and `meta`.
fn always_kept(key: &str) -> bool {
    matches!(
        key.strip_prefix('_').unwrap_or(key),
        "resourceType" | "id" | "meta"
    )
}

/// Keeps the summary and modifier members of `object`, an instance of `node`.
fn summarize_object(object: &mut Object, node: &Node, resource_root: bool) {
    for mut entry in std::mem::take(object) {
        let key = entry.key.as_str();
        if resource_root && always_kept(key) {
            object.push_entry(entry);
            continue;
        }
        let Some(member) = node.members.get(key) else {
            continue;
        };
        let element = member.element;
        let keep = if element.modifier {
            true
        } else if !element.summary {
            false
        } else {
            match member.target {
                Target::Primitive => true,
                Target::Complex(path) => match SCHEMA.nodes.get(path) {
                    Some(child) => summarize_value(&mut entry.value, child),
                    None => true,
                },
                Target::Resource => summarize_resources(&mut entry.value),
            }
        };
        if keep {
            object.push_entry(entry);
        }
    }
}

/// Summarizes an element value (an object or an array of them); false when nothing is
/// left, so that no empty object or array is served.
fn summarize_value(value: &mut Json, node: &Node) -> bool {
    match value {
        Json::Object(object) => {
            summarize_object(object, node, false);
            !object.is_empty()
        }
        Json::Array(items) => {
            items.retain_mut(|item| summarize_value(item, node));
            !items.is_empty()
        }
        _ => true,
    }
}

/// Summarizes resources held in an element (`Bundle.entry.resource`), each as its own type.
fn summarize_resources(value: &mut Json) -> bool {
    match value {
        Json::Object(object) => {
            if let Some(node) = resource_node(object) {
                summarize_object(object, node, true);
            }
            !object.is_empty()
        }
        Json::Array(items) => {
            items.retain_mut(summarize_resources);
            !items.is_empty()
        }
        _ => true,
    }
}

/// The node of the resource type named by an object's `resourceType`.
fn resource_node(object: &Object) -> Option<&'static Node> {
    let resource_type = object.get_unique("resourceType").ok().flatten()?.as_str()?;
    SCHEMA
        .nodes
        .get(resource_type)
        .filter(|node| node.is_resource)
}

fn subsetted_coding() -> Json {
    let mut coding = Object::new();
    coding.push("system".into(), Json::String(SUBSETTED_SYSTEM.into()));
    coding.push("code".into(), Json::String(SUBSETTED_CODE.into()));
    coding.push("display".into(), Json::String("subsetted".into()));
    Json::Object(coding)
}

fn is_subsetted_coding(coding: &Json) -> bool {
    let field = |name: &str| {
        coding
            .as_object()
            .and_then(|o| o.get_unique(name).ok().flatten())
            .and_then(Json::as_str)
    };
    field("system") == Some(SUBSETTED_SYSTEM) && field("code") == Some(SUBSETTED_CODE)
}

/// Appends the `SUBSETTED` tag to `meta.tag` (creating `tag`, or `meta` after `id`, when
/// missing), unless it is there already.
fn mark_subsetted(object: &mut Object) {
    if !object.contains_key("meta") {
        let mut meta = Object::new();
        meta.push("tag".into(), Json::Array(vec![subsetted_coding()]));
        let entries = std::mem::take(object);
        let after = if entries.iter().any(|e| e.key.as_str() == "id") {
            "id"
        } else {
            "resourceType"
        };
        let mut meta = Some(meta);
        for entry in entries {
            let here = entry.key.as_str() == after;
            object.push_entry(entry);
            if here && let Some(meta) = meta.take() {
                object.push("meta".into(), Json::Object(meta));
            }
        }
        if let Some(meta) = meta {
            object.push("meta".into(), Json::Object(meta));
        }
        return;
    }
    let Ok(Some(Json::Object(meta))) = object.get_unique_mut("meta") else {
        return;
    };
    if !meta.contains_key("tag") {
        meta.push("tag".into(), Json::Array(vec![subsetted_coding()]));
        return;
    }
    if let Ok(Some(Json::Array(tags))) = meta.get_unique_mut("tag")
        && !tags.iter().any(is_subsetted_coding)
    {
        tags.push(subsetted_coding());
    }
}

/// Per resource type, data type and backbone element: its members by JSON name.
#[derive(Debug)]
struct Schema {
    nodes: HashMap<&'static str, Node>,
}

#[derive(Debug)]
struct Node {
    /// The type name or backbone element path.
    name: &'static str,
    is_resource: bool,
    /// JSON member name (`given`, `_given`, `valueQuantity`) -> its element.
    members: HashMap<Box<str>, Member>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    element: &'static ElementDefinition,
    target: Target,
}

/// What an element's value is.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A primitive, or its `_name` companion.
    Primitive,
    /// A data type or backbone element: the node that describes it.
    Complex(&'static str),
    /// A resource (`contained`, `Bundle.entry.resource`).
    Resource,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema::build(Definitions::r4()));

impl Schema {
    /// Every node reachable from the resource types.
    fn build(definitions: &'static Definitions) -> Schema {
        let mut nodes = HashMap::new();
        let mut pending = definitions.resource_types();
        while let Some(path) = pending.pop() {
            if nodes.contains_key(path) {
                continue;
            }
            let node = Node::build(definitions, path, &mut pending);
            nodes.insert(path, node);
        }
        Schema { nodes }
    }
}

impl Node {
    fn build(
        definitions: &'static Definitions,
        path: &'static str,
        pending: &mut Vec<&'static str>,
    ) -> Node {
        let mut members = HashMap::new();
        for element in definitions.children(path) {
            let name = element.name();
            if let Some(target) = element.content_reference.as_deref() {
                pending.push(target);
                let member = Member {
                    element,
                    target: Target::Complex(target),
                };
                members.insert(name.into(), member);
                continue;
            }
            for element_type in &element.types {
                let code = element_type.code.as_str();
                let key = if element.is_choice() {
                    format!("{name}{}", upper_first(code))
                } else {
                    name.to_owned()
                };
                let target = if code == "Resource" {
                    Target::Resource
                } else if element.is_backbone() {
                    pending.push(&element.path);
                    Target::Complex(&element.path)
                } else {
                    match definitions.type_definition(code) {
                        Some(definition) if definition.kind != TypeKind::PrimitiveType => {
                            pending.push(code);
                            Target::Complex(code)
                        }
                        _ => Target::Primitive,
                    }
                };
                if let Target::Primitive = target {
                    members.insert(format!("_{key}").into(), Member { element, target });
                }
                members.insert(key.into(), Member { element, target });
            }
        }
        Node {
            name: path,
            is_resource: definitions.is_resource_type(path),
            members,
        }
    }
}

/// `quantity` -> `Quantity`: the suffix of a choice element's JSON name.
fn upper_first(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use json_syntax::{Parse, Print};

    use super::*;

    fn parse(text: &str) -> Json {
        Json::parse_str(text).expect("valid JSON").0
    }

    fn print(value: &Json) -> String {
        value.compact_print().to_string()
    }

    fn elements(value: &str, types: &[&str]) -> Subset {
        let parsed = Elements::parse(value, types).expect("parses");
        assert!(parsed.unsupported.is_empty(), "{:?}", parsed.unsupported);
        Subset::Elements(parsed.elements.expect("selectors"))
    }

    /// `subset` applied to `resource` (as a match), printed.
    fn subset(subset: &Subset, resource: &str) -> String {
        let mut value = parse(resource);
        assert!(subset.apply(&mut value, SearchMode::Match), "applies");
        print(&value)
    }

    const TAG: &str = r#""tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"subsetted"}]"#;

    const PATIENT: &str = r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"2024-01-01T00:00:00.000Z","extension":[{"url":"http://x/m","valueString":"kept"}]},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"},"extension":[{"url":"http://x/e","valueDecimal":1.50}],"modifierExtension":[{"url":"http://x/mod","valueBoolean":true}],"identifier":[{"id":"i1","extension":[{"url":"http://x/i","valueString":"v"}],"system":"urn:mrn","value":"1"}],"active":true,"name":[{"family":"Müller","given":["Ann",null],"_given":[null,{"extension":[{"url":"http://x/g","valueString":"g"}]}]}],"gender":"female","birthDate":"1970-03-04","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-04T10:00:00+01:00"}]},"deceasedBoolean":false,"maritalStatus":{"text":"married"},"photo":[{"contentType":"image/png","data":"aGVsbG8=","title":"me"},{"data":"aGVsbG8="}],"contact":[{"name":{"family":"Roe"}}],"contained":[{"resourceType":"Organization","id":"o1","name":"Org"}]}"#;

    #[test]
    fn summary_keeps_summary_and_modifier_elements_at_every_depth() {
        let out = subset(&Subset::Summary, PATIENT);
        let expected = format!(
            r#"{{"resourceType":"Patient","id":"p1","meta":{{"versionId":"2","lastUpdated":"2024-01-01T00:00:00.000Z","extension":[{{"url":"http://x/m","valueString":"kept"}}],{TAG}}},"modifierExtension":[{{"url":"http://x/mod","valueBoolean":true}}],"identifier":[{{"system":"urn:mrn","value":"1"}}],"active":true,"name":[{{"family":"Müller","given":["Ann",null],"_given":[null,{{"extension":[{{"url":"http://x/g","valueString":"g"}}]}}]}}],"gender":"female","birthDate":"1970-03-04","_birthDate":{{"extension":[{{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-04T10:00:00+01:00"}}]}},"deceasedBoolean":false}}"#
        );
        // text, extension, contained, maritalStatus, photo and contact are not summary
        // elements; identifier keeps Identifier's summary elements (not id, extension);
        // modifierExtension is a modifier; meta is kept whole; _given and _birthDate go with
        // their primitives
        assert_eq!(out, expected);
    }

    #[test]
    fn summary_follows_data_types_backbones_choices_and_nested_resources() {
        // Attachment.data is not a summary element; an Attachment left empty disappears
        let media = r#"{"resourceType":"Media","id":"m","status":"completed","content":{"contentType":"image/png","data":"aGVsbG8="}}"#;
        assert_eq!(
            subset(&Subset::Summary, media),
            format!(
                r#"{{"resourceType":"Media","id":"m","meta":{{{TAG}}},"status":"completed","content":{{"contentType":"image/png"}}}}"#
            )
        );
        let media = r#"{"resourceType":"Media","id":"m","status":"completed","content":{"data":"aGVsbG8="}}"#;
        assert_eq!(
            subset(&Subset::Summary, media),
            format!(r#"{{"resourceType":"Media","id":"m","meta":{{{TAG}}},"status":"completed"}}"#)
        );
        // choice types: Observation.value[x] is a summary element, of any type
        let observation = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"status":"final","code":{"text":"x"},"valueQuantity":{"value":7.20,"unit":"%"},"_status":{"extension":[{"url":"http://x/s","valueCode":"c"}]},"note":[{"text":"n"}],"component":[{"code":{"text":"c"},"valueString":"v","_valueString":{"id":"s1"},"referenceRange":[{"text":"r"}]}]}"#;
        let out = subset(&Subset::Summary, observation);
        assert_eq!(
            out,
            format!(
                r#"{{"resourceType":"Observation","id":"o","meta":{{"versionId":"1",{TAG}}},"status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":7.20,"unit":"%"}},"_status":{{"extension":[{{"url":"http://x/s","valueCode":"c"}}]}},"component":[{{"code":{{"text":"c"}},"valueString":"v","_valueString":{{"id":"s1"}}}}]}}"#
            )
        );
        // a Bundle's entries are summarized as their own types
        let bundle = r#"{"resourceType":"Bundle","id":"b","type":"collection","entry":[{"fullUrl":"urn:x","resource":{"resourceType":"Patient","id":"p","text":{"status":"empty","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"/>"},"gender":"male","contact":[{"name":{"family":"Roe"}}]}}]}"#;
        assert_eq!(
            subset(&Subset::Summary, bundle),
            format!(
                r#"{{"resourceType":"Bundle","id":"b","meta":{{{TAG}}},"type":"collection","entry":[{{"fullUrl":"urn:x","resource":{{"resourceType":"Patient","id":"p","gender":"male"}}}}]}}"#
            )
        );
        // content references: Parameters.parameter.part has the content of
        // Parameters.parameter (whose extension is not a summary element)
        let parameters = r#"{"resourceType":"Parameters","id":"x","parameter":[{"name":"a","part":[{"name":"b","extension":[{"url":"http://x/e","valueString":"e"}],"valueString":"v"}]}]}"#;
        assert_eq!(
            subset(&Subset::Summary, parameters),
            format!(
                r#"{{"resourceType":"Parameters","id":"x","meta":{{{TAG}}},"parameter":[{{"name":"a","part":[{{"name":"b","valueString":"v"}}]}}]}}"#
            )
        );
    }

    #[test]
    fn text_data_and_elements_select_top_level_elements() {
        let observation = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},"status":"final","_status":{"id":"s"},"category":[{"text":"lab"}],"code":{"text":"x"},"subject":{"reference":"Patient/1"},"effectiveDateTime":"2020-01-01","valueQuantity":{"value":7.20},"modifierExtension":[{"url":"http://x/m","valueBoolean":true}]}"#;
        let text = format!(
            r#"{{"resourceType":"Observation","id":"o","meta":{{"versionId":"1",{TAG}}},"text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}},"status":"final","_status":{{"id":"s"}},"code":{{"text":"x"}},"modifierExtension":[{{"url":"http://x/m","valueBoolean":true}}]}}"#
        );
        assert_eq!(subset(&Subset::Text, observation), text, "_summary=text");

        let data = subset(&Subset::Data, observation);
        assert_eq!(
            data,
            observation
                .replace(
                    r#""text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},"#,
                    ""
                )
                .replace(r#""versionId":"1""#, &format!(r#""versionId":"1",{TAG}"#)),
            "_summary=data removes text and nothing else"
        );

        let expected = format!(
            r#"{{"resourceType":"Observation","id":"o","meta":{{"versionId":"1",{TAG}}},"status":"final","_status":{{"id":"s"}},"code":{{"text":"x"}},"subject":{{"reference":"Patient/1"}},"valueQuantity":{{"value":7.20}},"modifierExtension":[{{"url":"http://x/m","valueBoolean":true}}]}}"#
        );
        for selection in ["subject,value", "subject,value[x]", "subject,valueQuantity"] {
            assert_eq!(
                subset(&elements(selection, &["Observation"]), observation),
                expected,
                "_elements={selection}: the listed, mandatory and modifier elements"
            );
        }
        assert!(
            !subset(&elements("valueString", &["Observation"]), observation)
                .contains("valueQuantity"),
            "a choice named by one type selects only that type"
        );
        let patient = subset(&elements("birthDate", &["Patient"]), PATIENT);
        assert!(
            patient.contains(r#""birthDate":"1970-03-04","_birthDate":{"#),
            "_birthDate goes with birthDate: {patient}"
        );
        assert!(!patient.contains("name") && !patient.contains("\"text\""));
    }

    #[test]
    fn what_stays_is_byte_identical() {
        let resource = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000Z","tag":[{"code":"t"}]},"status":"final","code":{"text":"é \"q\" \\ \n \u0001 / 😀"},"valueQuantity":{"value":1.50e+1,"unit":"%"},"component":[{"code":{"text":"c"},"valueInteger":-0}]}"#;
        let out = subset(&Subset::Data, resource);
        let expected = resource.replace(
            r#"[{"code":"t"}]"#,
            r#"[{"code":"t"},{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"subsetted"}]"#,
        );
        assert_eq!(
            out, expected,
            "number literals, escapes and order are kept; the tag is appended"
        );
        let again = subset(&Subset::Data, &out);
        assert_eq!(again, out, "the tag is added once");
    }

    #[test]
    fn a_missing_meta_is_created_after_id() {
        let out = subset(
            &Subset::Data,
            r#"{"resourceType":"Basic","id":"b","code":{"text":"x"}}"#,
        );
        assert_eq!(
            out,
            format!(
                r#"{{"resourceType":"Basic","id":"b","meta":{{{TAG}}},"code":{{"text":"x"}}}}"#
            )
        );
        assert!(is_subsetted(&parse(&out)));
        assert!(!is_subsetted(&parse(PATIENT)));
    }

    #[test]
    fn elements_apply_to_includes_only_through_typed_selectors() {
        let plain = elements("name", &["Patient"]);
        assert!(plain.applies_to("Patient", SearchMode::Match));
        assert!(
            !plain.applies_to("Patient", SearchMode::Include),
            "R4: the list of elements does not apply to included resources"
        );
        let mut value = parse(PATIENT);
        assert!(!plain.apply(&mut value, SearchMode::Include));
        assert_eq!(print(&value), PATIENT, "left as it is");

        let typed = elements("Patient.gender,code", &["Observation"]);
        assert!(typed.applies_to("Patient", SearchMode::Include));
        assert!(!typed.applies_to("Organization", SearchMode::Include));
        let mut value = parse(PATIENT);
        assert!(typed.apply(&mut value, SearchMode::Include));
        let out = print(&value);
        assert!(
            out.contains(r#""gender":"female""#) && !out.contains("birthDate"),
            "only the typed selector applies to an included Patient: {out}"
        );
        assert!(Subset::Summary.applies_to("Patient", SearchMode::Include));
    }

    #[test]
    fn elements_parse_reports_what_it_cannot_select() {
        let cases: [(&str, &[&str], usize, &[&str]); 7] = [
            ("name,birthDate", &["Patient"], 2, &[]),
            ("name,code", &["Patient", "Observation"], 2, &[]),
            (
                "nope,name",
                &["Patient"],
                1,
                &[r#""nope" is not a top-level element of Patient"#],
            ),
            (
                "name.given",
                &["Patient"],
                0,
                &["only top-level elements can be selected"],
            ),
            (
                "Observation.nope",
                &[],
                0,
                &[r#""nope" is not a top-level element of Observation"#],
            ),
            (
                "_birthDate",
                &["Patient"],
                0,
                &["is not a top-level element"],
            ),
            ("identifier", &[], 1, &[]),
        ];
        for (value, types, selected, messages) in cases {
            let parsed = Elements::parse(value, types).expect("parses");
            let count = parsed.elements.as_ref().map_or(0, |e| e.selectors.len());
            assert_eq!(count, selected, "_elements={value}");
            assert_eq!(
                parsed.unsupported.len(),
                messages.len(),
                "_elements={value}"
            );
            for (message, expected) in parsed.unsupported.iter().zip(messages) {
                assert!(
                    message.contains(expected),
                    "_elements={value}: expected {expected:?} in {message:?}"
                );
            }
        }
        for bad in ["", "name,", ",name", "name,,gender"] {
            let error = Elements::parse(bad, &["Patient"]).expect_err("refused");
            assert!(error.contains("comma-separated"), "{bad:?}: {error}");
        }
        let parsed = Elements::parse("Patient.name, value[x]", &["Observation"]).expect("parses");
        assert_eq!(
            parsed.elements.expect("selectors").to_param(),
            "Patient.name,value"
        );
    }

    #[test]
    fn every_resource_type_has_a_node_with_its_elements() {
        let definitions = Definitions::r4();
        for resource_type in definitions.resource_types() {
            let node = SCHEMA.nodes.get(resource_type).expect("node");
            assert!(
                node.is_resource && node.members.contains_key("id"),
                "{resource_type}"
            );
        }
        let observation = &SCHEMA.nodes["Observation"];
        for key in ["valueQuantity", "valueString", "_valueString", "component"] {
            assert!(observation.members.contains_key(key), "Observation.{key}");
        }
        assert!(!observation.members.contains_key("_valueQuantity"));
    }
}
